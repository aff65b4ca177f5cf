"""Every notebook runs in a real kernel: nbclient for the ordinary ones, jupyter_client
for the one that kills and restarts its own kernel."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest

from helpers import run_in_kernel, wait_until

pytestmark = pytest.mark.kernel
NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
RESTARTING = {"02-resume-across-kernel-restarts.ipynb", "05-background-service.ipynb"}


def _restarts(nb) -> bool:
    return any("restart-kernel" in c.metadata.get("tags", []) for c in nb.cells)


def test_every_notebook_is_covered():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert len(names) >= 4
    for name in names:
        assert _restarts(nbformat.read(NOTEBOOKS / name, as_version=4)) == (name in RESTARTING)


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb") if p.name not in RESTARTING))
def test_notebook_runs_with_nbclient(name, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    if name.startswith("01"):
        widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert widgets, "fetch() showed no progress panel"
    if name.startswith("04"):
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(images) >= 2, "both plots must render"


def _all_done(state_dir) -> bool:
    from bgdl_nb._journal import read_journal
    journals = list((state_dir / "sessions").glob("*.sqlite3"))
    return bool(journals) and all(t.state == "completed" for j in journals
                                  for t in read_journal(j, j.name[:-len(".sqlite3")])[0])


@pytest.mark.parametrize("name", sorted(RESTARTING))
def test_notebook_that_restarts_its_kernel(name, tmp_path, state_dir):
    from jupyter_client.manager import KernelManager

    shutil.copy(NOTEBOOKS / name, tmp_path / name)
    nb = nbformat.read(tmp_path / name, as_version=4)
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path), env=os.environ.copy())
    kc = km.client()
    kc.start_channels()
    restarted = 0
    output = []
    try:
        kc.wait_for_ready(timeout=60)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            tags = cell.metadata.get("tags", [])
            if "restart-kernel" in tags:
                km.restart_kernel(now=True)  # what the cell does to the kernel, done from outside
                if "wait-until-done" in tags:  # what the notebook asks its reader to do
                    wait_until(lambda: _all_done(state_dir), timeout=120, what="the service to finish")
                kc.wait_for_ready(timeout=60)
                restarted += 1
                continue
            output.append(run_in_kernel(kc, cell.source, timeout=300))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        from bgdl_nb.demo import RemoteOrigin
        for info in tmp_path.glob("demo-origin*.json"):
            RemoteOrigin.load(info).stop()
    assert restarted == 1
    if name.startswith("02"):
        assert (tmp_path / "data" / "restart" / "survey.bin").stat().st_size == 48_000_000
        assert "one continuous event log across 2 kernels" in "".join(output)
    if name.startswith("05"):
        text = "".join(output)
        assert "finished while no kernel was attached: True" in text
        assert text.count("did_finish_events_for_background_session") == 1
        assert "did_finish_downloading_to" in text
